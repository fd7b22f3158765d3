//! LDIF (RFC 2849) snapshots: a streaming reader of content records and a writer.
//!
//! The reader handles folded lines, `::` base64 values, comments (also folded ones), the
//! `version:` line and CRLF line ends. It rejects `:<` URL values and change records
//! (`changetype:`, `-` separators) with `file:line: reason` (usage errors, exit 2): a snapshot of
//! a directory is content only.

use super::entry::{encode_guid, RawEntry};
use super::presets::{Schema, TypeSchema};
use super::DirectoryRecord;
use crate::address::{Guid, RecordType};
use crate::error::{Error, Result};
use base64::Engine;
use std::io::{BufRead, Write};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Reads LDIF content records one at a time.
pub struct LdifReader<R> {
    input: R,
    name: String,
    /// Number of the last physical line read.
    line: usize,
    /// A physical line read ahead (the start of the next logical line), with its number.
    pending: Option<(Vec<u8>, usize)>,
    seen_record: bool,
    eof: bool,
}

impl<R: BufRead> LdifReader<R> {
    /// `name` is what messages call the input (the file name).
    pub fn new(input: R, name: impl Into<String>) -> Self {
        LdifReader {
            input,
            name: name.into(),
            line: 0,
            pending: None,
            seen_record: false,
            eof: false,
        }
    }

    fn err(&self, line: usize, msg: impl std::fmt::Display) -> Error {
        Error::usage(format!("{}:{line}: {msg}", self.name))
    }

    fn physical(&mut self) -> Result<Option<(Vec<u8>, usize)>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        if self.eof {
            return Ok(None);
        }
        let mut buf = Vec::new();
        let n = self
            .input
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::runtime(format!("cannot read {}: {e}", self.name)))?;
        if n == 0 {
            self.eof = true;
            return Ok(None);
        }
        self.line += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        Ok(Some((buf, self.line)))
    }

    /// The next logical line (continuations joined), with the number of its first physical line.
    fn logical(&mut self) -> Result<Option<(Vec<u8>, usize)>> {
        let Some((mut text, at)) = self.physical()? else {
            return Ok(None);
        };
        if text.first() == Some(&b' ') && !text.iter().all(|c| *c == b' ') {
            return Err(self.err(
                at,
                "continuation line (starting with a space) without a line to continue",
            ));
        }
        loop {
            match self.physical()? {
                Some((next, _)) if next.first() == Some(&b' ') => {
                    text.extend_from_slice(&next[1..])
                }
                Some(other) => {
                    self.pending = Some(other);
                    break;
                }
                None => break,
            }
        }
        Ok(Some((text, at)))
    }

    /// The next entry and the line its `dn:` is on; `None` at the end of the input.
    pub fn next_entry(&mut self) -> Result<Option<(RawEntry, usize)>> {
        let mut entry: Option<(RawEntry, usize)> = None;
        while let Some((text, at)) = self.logical()? {
            if text.iter().all(|c| *c == b' ') {
                if entry.is_some() {
                    break;
                }
                continue;
            }
            if text.first() == Some(&b'#') {
                continue;
            }
            if text == b"-" {
                return Err(self.err(
                    at,
                    "`-` separator of a change record: only content records (plain entries) are supported; export the directory with slapcat or ldapsearch instead",
                ));
            }
            let (name, value) = self.split(&text, at)?;
            if entry.is_none() {
                if name.eq_ignore_ascii_case("version") && !self.seen_record {
                    if value != b"1" {
                        return Err(self.err(
                            at,
                            format!(
                                "unsupported LDIF version `{}` (only 1)",
                                String::from_utf8_lossy(&value)
                            ),
                        ));
                    }
                    continue;
                }
                if !name.eq_ignore_ascii_case("dn") {
                    return Err(self.err(
                        at,
                        format!("expected `dn:` to start an entry, found `{name}:`"),
                    ));
                }
                let dn = String::from_utf8(value)
                    .map_err(|_| self.err(at, "the DN is not valid UTF-8"))?;
                self.seen_record = true;
                entry = Some((RawEntry::new(dn), at));
                continue;
            }
            if name.eq_ignore_ascii_case("changetype") {
                return Err(self.err(
                    at,
                    format!(
                        "change record (`changetype: {}`): only content records (plain entries) are supported; export the directory with slapcat or ldapsearch instead",
                        String::from_utf8_lossy(&value)
                    ),
                ));
            }
            if name.eq_ignore_ascii_case("control") {
                return Err(self.err(
                    at,
                    "`control:` belongs to change records, which are not supported",
                ));
            }
            if name.eq_ignore_ascii_case("dn") {
                return Err(self.err(
                    at,
                    "a second `dn:` in one entry (is a blank line missing between entries?)",
                ));
            }
            if let Some((e, _)) = entry.as_mut() {
                e.push(&name, value);
            }
        }
        Ok(entry)
    }

    /// Splits `name: value`, `name:: base64` (decoded) and rejects `name:< url`.
    fn split(&self, text: &[u8], at: usize) -> Result<(String, Vec<u8>)> {
        let Some(colon) = text.iter().position(|c| *c == b':') else {
            return Err(self.err(
                at,
                format!(
                    "expected `attribute: value`, found `{}`",
                    String::from_utf8_lossy(text)
                ),
            ));
        };
        let name = std::str::from_utf8(&text[..colon])
            .map_err(|_| self.err(at, "attribute name is not valid UTF-8"))?;
        let name = name.trim_end();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b';' | b'.' | b'_'));
        if !valid {
            return Err(self.err(at, format!("`{name}` is not an attribute name")));
        }
        let rest = &text[colon + 1..];
        match rest.first() {
            Some(b':') => {
                let b64: Vec<u8> = rest[1..].iter().copied().filter(|c| !c.is_ascii_whitespace()).collect();
                let value = B64
                    .decode(&b64)
                    .map_err(|e| self.err(at, format!("invalid base64 value of `{name}`: {e}")))?;
                Ok((name.to_string(), value))
            }
            Some(b'<') => Err(self.err(
                at,
                format!("`{name}:<` takes its value from a URL, which is not supported; put the value in the file (base64 with `{name}::`)"),
            )),
            _ => {
                let n = rest.iter().take_while(|c| **c == b' ').count();
                Ok((name.to_string(), rest[n..].to_vec()))
            }
        }
    }
}

/// Whether RFC 2849 requires a value to be written base64 (not a SAFE-STRING).
pub fn needs_base64(v: &[u8]) -> bool {
    match v.first() {
        None => false,
        Some(b' ' | b':' | b'<') => true,
        _ => {
            v.last() == Some(&b' ')
                || v.iter()
                    .any(|&c| c == 0 || c == b'\n' || c == b'\r' || c >= 0x80)
        }
    }
}

/// Writes one `name: value` line, base64 when needed, folded at 76 columns.
pub fn write_attr(out: &mut impl Write, name: &str, value: &[u8]) -> std::io::Result<()> {
    let line = if needs_base64(value) {
        format!("{name}:: {}", B64.encode(value))
    } else {
        // Safe: needs_base64 is false, so it is ASCII.
        format!("{name}: {}", String::from_utf8_lossy(value))
    };
    let bytes = line.as_bytes();
    let mut start = 0;
    let mut width = 76;
    while start < bytes.len() {
        let end = (start + width).min(bytes.len());
        if start > 0 {
            out.write_all(b" ")?;
        }
        out.write_all(&bytes[start..end])?;
        out.write_all(b"\n")?;
        start = end;
        width = 75;
    }
    Ok(())
}

/// The object classes that make `t`'s filter select an entry (the positive `objectClass=` terms).
fn object_classes(t: &TypeSchema) -> Vec<String> {
    use super::entry::Filter;
    fn collect(f: &Filter, out: &mut Vec<String>) {
        match f {
            Filter::And(fs) => fs.iter().for_each(|f| collect(f, out)),
            Filter::Or(fs) => {
                if let Some(f) = fs.first() {
                    collect(f, out)
                }
            }
            Filter::Equal(a, v) if a.eq_ignore_ascii_case("objectClass") => {
                out.push(String::from_utf8_lossy(v).into_owned())
            }
            _ => {}
        }
    }
    let mut out = vec!["top".to_string()];
    if let Some(f) = t.filter.as_deref().and_then(Filter::parse) {
        collect(&f, &mut out);
    }
    if out.len() == 1 {
        out.push(match t.kind {
            RecordType::User => "inetOrgPerson".into(),
            RecordType::Group => "groupOfNames".into(),
            RecordType::Location | RecordType::Resource => "apple-resource".into(),
        });
    }
    out
}

/// Writes records as LDIF content records readable back with the same mapping.
pub fn write_records(
    out: &mut impl Write,
    records: &[DirectoryRecord],
    m: &Schema,
    base: Option<&str>,
    origin: &str,
) -> std::io::Result<()> {
    writeln!(
        out,
        "# principal-reconciler directory snapshot of {}",
        origin.replace('\n', " ")
    )?;
    writeln!(
        out,
        "# {} records; read it back with [directory] ldif = \"<this file>\"",
        records.len()
    )?;
    writeln!(out, "version: 1")?;
    for r in records {
        let t = m.get(r.kind);
        writeln!(out)?;
        let dn = record_dn(r, t, base);
        write_attr(out, "dn", dn.as_bytes())?;
        for c in object_classes(t) {
            write_attr(out, "objectClass", c.as_bytes())?;
        }
        if let Some(a) = t.guid.first() {
            write_attr(out, a, &encode_guid(&r.guid, m.guid_form))?;
        }
        let lists = attribute_values(r, t, m);
        for (attr, values) in lists {
            if let Some(a) = attr {
                for v in values {
                    write_attr(out, &a, &v)?;
                }
            }
        }
    }
    Ok(())
}

/// The record's DN: the one it was read under, else `<short-name attr>=<short name>` under the
/// type's container and `base`.
fn record_dn(r: &DirectoryRecord, t: &TypeSchema, base: Option<&str>) -> String {
    if r.source.contains('=') {
        return r.source.clone();
    }
    let rdn_attr = t.short_name.first().map(String::as_str).unwrap_or("cn");
    let rdn = ldap3::dn_escape(
        r.short_names
            .first()
            .map(String::as_str)
            .unwrap_or(r.guid.as_str()),
    );
    let mut parts = vec![format!("{rdn_attr}={rdn}")];
    if !t.container.is_empty() {
        parts.push(t.container.clone());
    }
    parts.push(base.unwrap_or("dc=invalid").to_string());
    parts.join(",")
}

/// Each field's attribute (the first the mapping names, if any) and values, after the GUID.
/// When two fields share an attribute (AD's cn), its values are written once, under the first.
fn attribute_values(
    r: &DirectoryRecord,
    t: &TypeSchema,
    m: &Schema,
) -> Vec<(Option<String>, Vec<Vec<u8>>)> {
    let first = |l: &[String]| l.first().cloned();
    let text = |v: &[String]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
    let guids = |v: &[Guid]| v.iter().map(|g| encode_guid(g, m.guid_form)).collect();
    let full_name: Vec<String> = r.full_name.iter().cloned().collect();
    let mut lists: Vec<(Option<String>, Vec<Vec<u8>>)> = vec![
        (first(&t.short_name), text(&r.short_names)),
        (first(&t.full_name), text(&full_name)),
        (first(&t.email), text(&r.emails)),
        (first(&t.member_guid), guids(&r.member_guids)),
        (first(&t.member_uid), text(&r.member_names)),
        (first(&t.nested_guid), guids(&r.nested_guids)),
    ];
    for i in 0..lists.len() {
        for j in 0..i {
            if lists[i].0.is_some() && lists[i].0 == lists[j].0 {
                let vals = std::mem::take(&mut lists[i].1);
                for v in vals {
                    if !lists[j].1.contains(&v) {
                        lists[j].1.push(v);
                    }
                }
            }
        }
    }
    lists
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(text: &str) -> Result<Vec<(RawEntry, usize)>> {
        let mut r = LdifReader::new(text.as_bytes(), "t.ldif");
        let mut out = Vec::new();
        while let Some(e) = r.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn folded_lines_base64_comments_version() {
        let text = "version: 1\r\n# a comment\r\n#  folded comment\r\n  still comment\r\ndn: uid=a,cn=users,\r\n dc=od\r\ncn:: SsO8cmdlbg==\r\ndescription: long\r\n  value\r\nmail:   a@x\r\n\r\n\r\ndn: uid=b,dc=od\nuid: b\n";
        let es = read_all(text).unwrap();
        assert_eq!(es.len(), 2);
        let (a, line) = &es[0];
        assert_eq!(*line, 5);
        assert_eq!(a.dn, "uid=a,cn=users,dc=od");
        assert_eq!(a.get("CN"), &[("Jürgen".as_bytes().to_vec())]);
        assert_eq!(a.get("description"), &[b"long value".to_vec()]);
        assert_eq!(a.get("mail"), &[b"a@x".to_vec()]);
        assert_eq!(es[1].1, 13);
    }

    #[test]
    fn rejections_name_file_and_line() {
        let cases = [
            ("dn: a=b\ncn:< file:///etc/passwd\n", "t.ldif:2:", "URL"),
            (
                "dn: a=b\nchangetype: modify\nreplace: cn\ncn: x\n-\n",
                "t.ldif:2:",
                "change record",
            ),
            (
                "dn: a=b\ncn x\n",
                "t.ldif:2:",
                "expected `attribute: value`",
            ),
            ("cn: x\n", "t.ldif:1:", "expected `dn:`"),
            ("dn: a=b\ncn:: !!!\n", "t.ldif:2:", "base64"),
            ("version: 2\n", "t.ldif:1:", "version"),
            ("dn: a=b\ncn: x\n-\n", "t.ldif:3:", "separator"),
            ("dn: a=b\ncn: x\ndn: c=d\n", "t.ldif:3:", "second `dn:`"),
            (" x\n", "t.ldif:1:", "continuation"),
        ];
        for (text, at, what) in cases {
            let err = read_all(text).unwrap_err();
            assert!(
                err.message.starts_with(at) && err.message.contains(what),
                "{text:?}: {}",
                err.message
            );
            assert_eq!(err.exit_status(), crate::error::ExitStatus::Usage);
        }
    }

    #[test]
    fn base64_when_required_and_folding() {
        assert!(needs_base64(b" lead"));
        assert!(needs_base64(b":colon"));
        assert!(needs_base64(b"<lt"));
        assert!(needs_base64(b"trail "));
        assert!(needs_base64("ü".as_bytes()));
        assert!(needs_base64(b"a\nb"));
        assert!(!needs_base64(b"plain: text"));
        let mut out = Vec::new();
        let long = "x".repeat(200);
        write_attr(&mut out, "description", long.as_bytes()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.lines().all(|l| l.len() <= 76));
        let es = read_all(&format!("dn: a=b\n{text}")).unwrap();
        assert_eq!(es[0].0.get("description"), &[long.into_bytes()]);
    }
}
